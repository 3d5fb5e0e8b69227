"""Job control: jobs, their store and leases, plans, workers, followers, builds, redrive."""
