"""rc-adapter: incremental multi-task learning without task interference by
reparameterized convolutions (Kanakis et al., ECCV 2020).

``import rc_adapter`` first installs the ``mmcv.ops`` fallback (only when
mmcv has no compiled ops), then exports the torch-only core API, and then,
when mmsegmentation is installed, registers the mmseg components.
"""
import importlib.util

from .compat import install_mmcv_ops_fallback

install_mmcv_ops_fallback()

from .core import *  # noqa: E402,F401,F403
from .core import __all__ as _core_all  # noqa: E402

from .core.version import __version__  # noqa: E402
__all__ = list(_core_all) + ['install_mmcv_ops_fallback', '__version__']

if importlib.util.find_spec('mmseg') is not None:
    from . import mmseg  # noqa: E402,F401  (registers modules)
