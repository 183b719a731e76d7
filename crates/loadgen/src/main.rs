//! PerfTest-style load generator.

fn main() {}
