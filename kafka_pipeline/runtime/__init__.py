"""The consumer loop every worker runs on: the app contract, the loop, cycle stats."""
