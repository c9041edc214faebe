"""Notebook helpers: the widgets and the Colab setup."""
