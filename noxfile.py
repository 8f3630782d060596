"""Developer and release sessions. They share the one virtualenv that ./dev prepares (.venv)."""

import glob

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "tests"]

SHELL_FILES = ["dev", ".ci/run", *glob.glob("appliance/**/*.sh", recursive=True),
               *glob.glob("packer/**/*.sh", recursive=True), "packer/context/slm-context",
               "packer/context/net-90-service-appliance", "appliance/templates/certbot-deploy-hook"]


@nox.session
def lint(session):
    session.run("ruff", "check", ".")
    session.run("shellcheck", *SHELL_FILES, external=True)


@nox.session
def artifacts(session):
    session.run("python", "-m", "artifacts", *session.posargs)


@nox.session
def tests(session):
    """Everything that must pass on every change: unit tests, then the local-stack conformance."""
    session.run("python", "-m", "artifacts")
    session.run("python", "-m", "pytest", "tests", *session.posargs)
    session.run("python", "-m", "pytest", "conformance", "--target", "local", "--profile", "ci")


@nox.session
def build(session):
    session.run("python", "-m", "artifacts")
    session.run("python", "packer/build.py", *session.posargs)


@nox.session
def conformance(session):
    """The release gate: against the image (built if missing) unless --target says otherwise."""
    session.run("python", "-m", "artifacts")
    if needs_image(session.posargs):
        session.run("python", "packer/build.py")
    session.run("python", "-m", "pytest", "conformance", *session.posargs)


def needs_image(args: list[str]) -> bool:
    """Whether this run boots the image, as the suite itself will resolve its target (the command
    line, SLM_CONFORMANCE_TARGET, the config file, the default)."""
    from conformance.settings import Settings
    from conformance.targets import target_class

    def option(name: str) -> str | None:
        return args[args.index(name) + 1] if name in args[:-1] else None

    return target_class(Settings.load(option("--config"), target=option("--target"))).boots_image


@nox.session
def conformance_url(session):
    """The url target (what an operator points at a deployed appliance) proven on the image booted
    here as if deployed: SSH host checks and the opt-in destructive ones included."""
    session.run("python", "-m", "artifacts")
    session.run("python", "packer/build.py")
    session.run("python", "-m", "vm_fixtures", "dist/slm-copilot.qcow2", "--",
                "python", "-m", "pytest", "conformance", "--target", "url", *session.posargs,
                env={"SLM_CONFORMANCE_DESTRUCTIVE": "1"})


@nox.session
def mutants(session):
    """The mutation score: realistic defects of appliance/, one at a time, against the local suite."""
    session.run("python", "-m", "artifacts")
    session.run("python", "-m", "conformance.mutation", *session.posargs)


@nox.session
def benchmark(session):
    session.run("python", "-m", "artifacts")
    session.run("python", "-m", "pytest", "benchmarks", *session.posargs)
