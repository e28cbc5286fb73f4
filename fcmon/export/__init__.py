"""What fcmon says about the results: the metric store and its text
renderer, the status board and the JSON document. Imports core and probe."""
