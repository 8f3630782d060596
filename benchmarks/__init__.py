"""Performance of the appliance: measured numbers, compared as ratios taken within one run."""
