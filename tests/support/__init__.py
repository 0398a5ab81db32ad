"""What several test modules share, one module per purpose (test modules import each name from the
module that holds it; no test module imports another):

- :mod:`tests.support.runs`: config composition, ``fedmtl`` in a subprocess, reading its results.
- :mod:`tests.support.data`: small synthetic datasets, seeded small models, assignment parameters.
- :mod:`tests.support.datasets`: every registered dataset built here, with the files it reads.
- :mod:`tests.support.celeba`: a small CelebA in its official layout.
- :mod:`tests.support.deployments`: silos' own tables and their ClientApps behind an in-process grid.
- :mod:`tests.support.fakes`: a fake model's arrays and fake silos behind an in-process grid.
- :mod:`tests.support.engines`: engines over the fake tasks and one round driven through them.
- :mod:`tests.support.bench`: hand-made run directories and a fake bench runner.
"""
