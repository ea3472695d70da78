"""A Hydra launcher that runs each sweep job in a process of its own, so that one job's
death (SIGKILL, out of memory) costs that job alone."""
