"""Recursive training (model collapse): ``medvol study recursive`` (:mod:`.study`)."""

from medvol.study.recursive.study import run_recursive_study

__all__ = ["run_recursive_study"]
