"""Reading spectra: tables in memory, stores on disk, the embedded APOGEE library.

Imports only :mod:`xpsvae.core`.
"""
