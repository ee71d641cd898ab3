from setuptools import find_packages, setup


def readme():
    with open('README.md', encoding='utf-8') as f:
        return f.read()


setup(
    name='mmddaq',
    version='0.1.0',
    description='Data-free quantization (DDAQ) for OpenMMLab classifiers and '
    'detectors',
    long_description=readme(),
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('tests', 'tools', 'configs')),
    # configs ship inside the package (mmddaq/.mim/configs links to
    # configs/), like mmdet's, for the `mmddaq::` config scope
    package_data={
        'mmddaq': ['.mim/model-index.yml', '.mim/configs/**/*.py']
    },
    python_requires='>=3.11',
    install_requires=[
        'torch==2.14.1',
        'torchvision==0.29.1',
        'mmengine==0.10.7',
        'mmcv==2.1.0',
        'mmdet==3.3.0',
        'mmpretrain==1.2.0',
        'numpy',
        'scikit-learn',
        'scikit-image',
        'matplotlib',
    ],
    extras_require=dict(
        tests=['pytest', 'pytest-timeout'],
        deploy=['onnx', 'onnxruntime'],
    ),
    license='Apache License 2.0',
)
