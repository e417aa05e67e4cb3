from tests.distributed.conftest import tiny_dataset  # noqa: F401  (the shared tiny prepared dataset, for any test)
