#![no_std]
// This file exists to give the crate a library target, so `detector` can name it as a
// build-dependency and cargo rebuilds the programs when they change.
