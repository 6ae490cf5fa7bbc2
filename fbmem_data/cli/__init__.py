"""The `fbmem` command line: a thin layer over the fbmem_data API, one module per command group.

Modules here import only typer and fbmem_data's light modules at import time; anything that
pulls torch is imported inside the command function, so `fbmem sql` starts fast.
"""
