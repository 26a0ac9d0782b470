//! Helpers shared by the whole-system tests in `tests/tests/`.
