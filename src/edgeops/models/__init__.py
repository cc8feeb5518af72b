"""The networks (`nets`: the mat MLP and PostureNet) and how they are fitted (`training`: recipes, the loop)."""
