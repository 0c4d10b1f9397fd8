"""Helpers of the metric tests: data samples and one-shot metric runs."""
import numpy as np
import torch
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample

init_default_scope('mmseg')


def sample(**fields) -> SegDataSample:
    """A data sample holding each keyword as a ``PixelData`` field (2-D
    arrays get a leading channel axis)."""
    ds = SegDataSample()
    ds.set_metainfo(dict(img_path='img.jpg'))
    for k, v in fields.items():
        t = torch.as_tensor(np.asarray(v))
        if t.ndim == 2:
            t = t[None]
        ds.set_data({k: PixelData(data=t)})
    return ds


def run_metric(metric, samples) -> dict:
    """Process ``samples`` (as the evaluator's dicts) and compute."""
    metric.process({}, [s.to_dict() for s in samples])
    return metric.compute_metrics(metric.results)
