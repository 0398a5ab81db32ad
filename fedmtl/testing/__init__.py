"""The contract kit: the checks every shipped plug-in passes, for plug-in authors' own tests
(as scikit-learn's ``check_estimator``).

In a plug-in package's tests::

    from fedmtl.testing import check_method

    def test_my_method_meets_the_contract(tmp_path):
        check_method("my_method", directory=tmp_path)

- :func:`check_method` (:mod:`fedmtl.testing.methods`): registration, same seed same result,
  checkpoint round trip, bit-identical resume, malformed replies refused, ``vectorized`` equal to
  ``inprocess``, one run through the simulation engine;
- :func:`check_dataset`, :func:`check_trunk` (:mod:`fedmtl.testing.data`): the dataset and trunk
  contracts (every registry member's).

Each check raises ``AssertionError`` saying what broke; the individual checks are public too.
"""

from fedmtl.testing.data import check_dataset, check_trunk
from fedmtl.testing.methods import check_method

__all__ = ["check_dataset", "check_method", "check_trunk"]
