from setuptools import find_packages, setup

setup(
    name="vvhost",
    version="0.1.0",
    description="Array-backed per-VM volumes (vvols) for KVM hosts run by libvirt and QEMU",
    packages=find_packages(include=["vvhost", "vvhost.*"]),
    package_data={"vvhost.guest": ["init.sh"]},
    python_requires=">=3.11",
    install_requires=[
        "click>=8.1",
        "fastapi>=0.110",
        "uvicorn>=0.29",
        "httpx>=0.27",
        "pydantic>=2.6",
        "SQLAlchemy>=2.0",
        "qemu.qmp>=0.0.3",
        "libvirt-python>=9.0",
        "prometheus_client>=0.16",
        "psycopg[binary]>=3.1",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6", "jsonschema>=4.18"],
    },
    entry_points={"console_scripts": ["vvhost=vvhost.cli:entry"]},
)
