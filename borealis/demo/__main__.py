"""`python -m borealis.demo --out demo`: the same as `borealis demo --out demo`."""

from borealis.demo import main

raise SystemExit(main())
