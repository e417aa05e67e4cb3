"""The job commands' entry points (dimerec-train, -eval, -plan, -env, -torchrun); data and serving keep their own."""
