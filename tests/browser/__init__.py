"""Browser tests: the notebooks in a real Jupyter server and a real Chromium (see jupyter_driver)."""
