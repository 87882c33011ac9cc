"""The web view (DESIGN §12): `registry serve` (a read-only app) and `registry report` (its static twin).

Pages: variants, one variant's schema history with grouped diffs, lineage (resume chains as SVG
graphs), runs, checkpoints with their match evidence, unmatched checkpoints with their nearest
build, and search. `data` assembles what each page shows, `render` turns it into HTML, `app`
serves it (with a JSON API) and `report` writes it to files.
"""
