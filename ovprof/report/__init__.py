"""Reports from run records: the savings tables beside the paper's, mask-ratio, batch and ZeRO views, plots.

    ovprof report --sweep quickstart

load.py reads the stores into pandas, tables.py builds the tables (cells are
numbers or the reason there is none), plots.py draws the PNGs, render.py writes
Markdown, self-contained HTML, CSV and JSON; paper.py holds the paper's figures.
"""
