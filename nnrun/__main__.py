"""`python -m nnrun ...` is `nnrun ...`, so `torchrun --nproc-per-node=N -m nnrun train RECIPE` works."""

from nnrun.cli import main

if __name__ == "__main__":
    main()
