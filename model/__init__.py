"""lass model core: backbone, language masks, mixed-language masked execution, bundles."""

import os

# OpenMP threads that spin while waiting stall when other processes hold the cores: on a
# shared 2-core machine a dense `base` forward took 17.1 s spinning and 9.0 s passive
# (bench/masked_forward.py). Only effective before torch is first imported; an explicit
# setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
