"""Validation branch (first-principles or reference-calculator anharmonic phonons).

* :mod:`~tdphonon.validation.ifc` — 2nd/3rd/4th-order IFCs fitted to force–displacement data with
  hiPhive, cutoffs as neighbour shells, fit RMSE and cross-validation;
* :mod:`~tdphonon.validation.scph` — self-consistent phonons at T from the quartic IFCs (q-space
  covariance on the commensurate mesh, mixing, convergence).
"""
