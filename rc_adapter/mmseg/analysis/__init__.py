"""The paper's two analyses, run on a user's own bank
(``tools/analyze.py``, ``docs/analysis.md``):

* :mod:`.size` -- model size against the number of tasks: the RC bank vs
  independent fine-tuned models vs the shared multi-task baseline, from the
  bank's real tensors (:func:`model_size_table`, :func:`measure_bank`,
  :func:`size_table`);
* :mod:`.rsa` -- representation similarity analysis between tasks, per
  layer (:func:`rsa`, :func:`rdm`, :func:`rdm_similarity`);
* :mod:`.plots`, :mod:`.report` -- the plots and the output files;
* :mod:`.models` -- building the RC segmentor and the baselines from their
  checkpoints.
"""
from .models import build_segmentor, checkpoint_tasks, load_baseline
from .plots import plot_model_size, plot_rsa_heatmaps, plot_rsa_layers
from .report import (check_out_dir, default_out_dir, write_rsa_report,
                     write_size_report)
from .rsa import (DEFAULT_GRID, DEFAULT_IMAGES, MIN_IMAGES,
                  backbone_features, default_layers, pool_features, rdm,
                  rdm_similarity, rsa, rsa_from_rdms, similarity_matrix,
                  validation_samples)
from .size import (PAPER_REDUCTION, PAPER_TASKS, BankSizes, Size,
                   format_size_table, measure_bank, measure_tensors,
                   model_size_table, size_summary, size_table)

__all__ = [
    'model_size_table', 'measure_bank', 'measure_tensors', 'size_table',
    'format_size_table', 'size_summary', 'Size', 'BankSizes',
    'PAPER_TASKS', 'PAPER_REDUCTION',
    'rsa', 'rdm', 'rdm_similarity', 'similarity_matrix', 'pool_features',
    'default_layers', 'validation_samples', 'backbone_features',
    'rsa_from_rdms', 'MIN_IMAGES', 'DEFAULT_IMAGES', 'DEFAULT_GRID',
    'build_segmentor', 'load_baseline', 'checkpoint_tasks',
    'plot_model_size', 'plot_rsa_heatmaps', 'plot_rsa_layers',
    'check_out_dir', 'default_out_dir', 'write_size_report',
    'write_rsa_report']
