"""GitOps: spec repositories read at a commit, validated, planned and synced.

``trees`` reads a repository (a commit or the work tree) one way for everybody;
``repochecks`` adds the checks that need the repository; ``plan`` says what a change
will do; ``sync`` decides what to apply and prune; ``git_source`` fetches and exports
commits; ``webhook`` lets a git host ask for a sync at once.
"""
