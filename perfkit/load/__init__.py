"""Client-side load generation: schedules, drivers, statistics and sweeps."""
