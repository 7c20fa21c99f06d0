"""Analysis of campaign results (the paper's Sections C–D): tables, trends, random forests, screening.

Submodules (imported on use; matminer and scikit-learn load only when needed):

* :mod:`~tdphonon.analysis.data` — campaign documents → pandas tables (materials, sites);
* :mod:`~tdphonon.analysis.features` — matminer composition/structure and site features;
* :mod:`~tdphonon.analysis.models` — outlier filter, Box–Cox, random-forest fits and importances;
* :mod:`~tdphonon.analysis.trends` — element heat map, shift per space group, distributions;
* :mod:`~tdphonon.analysis.screening` — R_onsite screening, prototypes, export for validation;
* :mod:`~tdphonon.analysis.reference` — ML-vs-DFT harmonic deviation (outlier filter);
* :mod:`~tdphonon.analysis.report` — :func:`~tdphonon.analysis.report.analyze` (``tdphonon analyze``).
"""
