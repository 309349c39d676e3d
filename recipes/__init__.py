"""Recipes: one absl app per vision task, each ending in an int8 .tflite and a report.

A recipe module (`classification`, `low_resolution`, `medical`, `multilabel`, `demo`) is a
`Task` plus flag defaults. The rest is shared:

- `config`: the `Config` of a run, its absl flags, and the checks that need no data;
- `task`: the `Task` interface (data, models, loss, scores, `.tflite` outputs, pictures) and
  `ClassificationTask`;
- `pipeline`: loading and checking the data, the student's view, the training batches;
- `flow`: `run(config, task)`, teacher -> student alone -> distillation -> QAT -> export;
- `report`: metrics.json, report.md, plot.png and the summary line;
- `console`: the progress lines.
"""
