"""The Streamlit app's view models: one module per page (DataFrames and plotly figures,
no Streamlit), the option forms, and ``widgets`` (the only module that imports Streamlit)."""

__all__ = []
