"""Issue 5: long, concurrent and large jobs, tomato-mqtt beside tomato 2.2.

``python -m bench.jobs [--quick] [--huge-both]``:

- (a) one job at 1 kHz for 60 s: points in the file vs expected, CPU of the recorder
  (tomato 2.2: the job process, which polls the driver and writes the file), time from
  the last point to the file written;
- (b) 20 pipelines, 20 concurrent jobs at 10 Hz for 10 s: jobs ended `c`, points, CPU
  of all services, peak RSS;
- (c) 100 components, 100 concurrent jobs at 10 Hz (tomato-mqtt only unless
  ``--huge-both``: 100 job processes of tomato 2.2 do not fit this 2-core machine's
  time budget);
- (d) writing the file of a job with 1,000,000 points (the recorder's writer,
  in-process, from 1,000 data batches as a node sends them).
"""

from __future__ import annotations

import sys

from bench.suite import Config, main

if __name__ == "__main__":
    argv = sys.argv[1:]
    both = "--huge-both" in argv
    argv = [a for a in argv if a != "--huge-both"]
    sys.exit(
        main(
            argv,
            prog="python -m bench.jobs",
            title="issue 5 — long and concurrent jobs, tomato-mqtt vs tomato 2.2",
            rows=("long.", "many.", "huge.", "write."),
            doc=__doc__,
            base=Config(huge_both=both),
            results="jobs",
        )
    )
