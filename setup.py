from setuptools import find_packages, setup

# The pinned stack this project is tested with. constraints.txt pins the
# transitive dependencies too (see Makefile).
INSTALL_REQUIRES = [
    'torch==2.14.1',
    'torchvision==0.29.1',
    'mmengine==0.10.7',
    'mmcv-lite==2.1.0',
    'mmsegmentation==1.2.2',
    'timm==1.0.31',
    'safetensors==0.8.0',
    'numpy==2.4.6',
    'scipy==1.17.1',
    'scikit-image==0.26.0',
    'opencv-python-headless==5.0.0.93',
    'matplotlib==3.11.2',
    'ftfy==6.3.1',  # mmseg.models imports it
    'regex==2026.11.19',  # mmseg.models imports it
    'tqdm==4.70.1',
    'onnx==1.23.2',  # tools/export.py --out FILE.onnx
    'setuptools>=77',  # torch needs it at run time
]

setup(
    name='rc-adapter',
    version='0.1.0',
    description='Reparameterized convolutions for incremental multi-task '
                'dense prediction (mmsegmentation / PyTorch plugin)',
    packages=find_packages(include=['rc_adapter', 'rc_adapter.*']),
    python_requires='>=3.11',
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # pytest-xdist: `make test` runs the suite on two workers.
        'dev': ['pytest==9.2.0', 'pytest-xdist==3.8.0'],
        # benchmarks/bench_peft.py: HuggingFace PEFT's LoRA side by side.
        'bench': ['peft==0.21.2'],
    },
)
