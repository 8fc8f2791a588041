"""FLoE app entry point (the Runs page lands with the app issue)."""
import streamlit as st

st.set_page_config(page_title="FLoE layer importance", layout="wide")
st.title("FLoE: which layers to adapt, and at what rank")
st.info("The analysis pages are being built. Meanwhile use the CLI: `.venv/bin/floe --help`.")
