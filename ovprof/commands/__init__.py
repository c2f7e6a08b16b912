"""One module per command. Heavy imports (torch, deepspeed, pandas) happen inside the functions."""
