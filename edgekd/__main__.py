"""`python -m edgekd ...` — the same CLI; what `torchrun -m edgekd run RECIPE` starts in every process."""
from .cli import main

if __name__ == "__main__":
    main()
