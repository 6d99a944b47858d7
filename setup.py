from setuptools import find_packages, setup

setup(
    name="nnunet-isrg",
    version="0.1.0",
    description="Interactive 3D CT lesion segmentation with structured lesion reports, as an nnU-Net v2 extension",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # trainers/ and planners/ are installed as packages of their own so that a plain (non-editable)
    # install still has the folder that nnU-Net's nnUNet_extTrainer points to (`isrg trainers-path`).
    packages=find_packages(include=["nnunet_isrg", "nnunet_isrg.*"]) + ["nnunet_isrg_trainers", "nnunet_isrg_planners"],
    package_dir={"nnunet_isrg_trainers": "trainers", "nnunet_isrg_planners": "planners"},
    package_data={"nnunet_isrg": ["server/static/*", "report/*.json", "report/schema/*.json"]},
    install_requires=[
        "nnunetv2>=2.7",
        "torch>=2.1,<=2.14.1",
        "batchgenerators>=0.25",
        "batchgeneratorsv2",
        "dynamic-network-architectures",
        "acvl-utils",
        "numpy",
        "scipy",
        "scikit-learn",
        "scikit-image",
        "connected-components-3d",
        "SimpleITK>=2.2",
        "pydicom>=2.4",
        "highdicom>=0.22",
        "matplotlib",
        "tqdm",
        "jsonschema",
        "fastapi",
        "uvicorn",
        "python-multipart",
    ],
    extras_require={"test": ["pytest", "httpx", "playwright", "schemathesis", "hypothesis"]},
    entry_points={"console_scripts": ["isrg=nnunet_isrg.cli:main"]},
)
