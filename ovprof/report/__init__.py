"""Reports from run records: the savings tables beside the paper's, mask-ratio, batch and ZeRO views, plots.

    ovprof report --sweep quickstart

load.py reads the stores into pandas, tables.py builds the tables in the
report's order from cells.py (cells are numbers or the reason there is none),
savings.py (savings and the paper's tables), axes.py (mask ratio, batch, ZeRO,
loss_impl, runs) and estimated.py; plots.py draws the PNGs, render.py writes
Markdown, self-contained HTML, CSV and JSON; paper.py holds the paper's figures.
"""
