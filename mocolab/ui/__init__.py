"""The faces of mocolab: what a user touches rather than what computes. The notebooks' settings and
set-up (notebook.py, project.py), the augmentation explorer (widgets.py), headless notebook runs
(headless.py: `python -m mocolab.ui.headless`) and the command lines' one-line errors (cli.py)."""
