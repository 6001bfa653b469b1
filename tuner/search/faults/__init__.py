"""Faults and stops, and how a trial ended: stop requests (signals), full disks, workers killed
under trials, trials that cannot fit in memory."""
