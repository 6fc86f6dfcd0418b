"""Training throughput of benchbd's trainer against a plain reference loop, in the same run.
The benchmark lives in the package (`benchbd bench` runs the same); see benchbd/bench/throughput.py."""

from benchbd.bench.throughput import main

if __name__ == "__main__":
    main()
