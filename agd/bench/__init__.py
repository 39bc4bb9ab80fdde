"""Benchmark suites behind ``agd bench`` (the commands are in :mod:`agd.commands.bench`): the Triton
kernels against eager (:mod:`agd.bench.kernels`), the C++/CUDA ops and students (:mod:`agd.bench.csrc`), and
derived students deployed per precision beside their peers (:mod:`agd.bench.deploy`)."""
