//! Examples of AESP live beside this file; this library is empty.
