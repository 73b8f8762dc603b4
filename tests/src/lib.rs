//! Cross-crate integration tests of im-layers live in `tests/tests/`; this library is empty.
