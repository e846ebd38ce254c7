"""ease-jax: federated multimodal unlearning (EASE) in JAX/Flax."""
import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent


def _requirements() -> list[str]:
  lines = (_HERE / "requirements.txt").read_text().splitlines()
  return [l.strip() for l in lines if l.strip() and not l.startswith("#")]


setuptools.setup(
    name="ease-jax",
    version="0.1.0",
    description="Federated multimodal unlearning (EASE) for CLIP + LoRA in JAX/Flax.",
    long_description=(_HERE / "README.md").read_text() if (_HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["ease_jax", "ease_jax.*"]),
    package_data={"ease_jax": ["assets/**/*", "data/assets/**/*"]},
    include_package_data=True,
    python_requires=">=3.11",
    install_requires=_requirements(),
    license="Apache-2.0",
)
