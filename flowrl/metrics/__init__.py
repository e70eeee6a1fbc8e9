"""Sample metrics: kernel diversity (diversity.py), flow entropy and likelihood (entropy.py).

Nothing is imported here (keeps `import flowrl` light); import the submodules, e.g.
`from flowrl.metrics.diversity import vendi_from_features`.
"""
