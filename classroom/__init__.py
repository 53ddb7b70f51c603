"""Classroom assignments of the course, graded with nbgrader.

- :mod:`classroom.authoring` builds nbgrader source notebooks (solution and test cells with their metadata).
- :mod:`classroom.variants` derives graded variants of a source (the release, a partial and wrong answers).
- :mod:`classroom.grading` releases assignments and autogrades a folder of submissions.
- :mod:`classroom.forkkernel` starts grading kernels by forking a process that has torch imported.

The package lives beside ``mmcourse`` rather than inside it: the notebooks' committed runs record a digest of
``mmcourse``'s sources, and grading tools are not what the chapters compute with.
"""
