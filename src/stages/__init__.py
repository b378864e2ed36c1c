"""Stage scripts of the self-training pipeline; each is `python -m src.stages.<name> CONFIG.yaml [overrides]`.

prepare -> train_ensemble -> (pseudo_label -> retrain) x rounds -> submit, chained and resumable by
`python -m src.stages.pipeline`. The config is a PipelineConfig (src/stages/pipeline_config.py).
"""
