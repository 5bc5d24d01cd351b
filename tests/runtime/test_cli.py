"""How every command ends: one error line, exit 2 for bad input, 1 for a failed run."""

import pytest

from apr_jax.cli import RUN_FAILED, USAGE_ERROR, run_command


class Failed(RuntimeError):
    pass


def raises(error):
    def body():
        raise error

    return body


def test_errors_become_one_line_and_an_exit_code(capsys, monkeypatch):
    monkeypatch.delenv("APR_JAX_DEBUG", raising=False)
    assert run_command(raises(ValueError("bad --num\nsecond line")), usage=(ValueError,)) == USAGE_ERROR
    assert capsys.readouterr().err == "error: bad --num\n"
    assert run_command(raises(Failed()), usage=(ValueError,), failures=(Failed,)) == RUN_FAILED
    assert capsys.readouterr().err == "error: Failed\n"
    assert run_command(lambda: None, usage=(ValueError,)) == 0
    assert run_command(lambda: 1, usage=(ValueError,)) == 1
    with pytest.raises(KeyError):  # not a user's mistake: the traceback stays
        run_command(raises(KeyError("x")), usage=(ValueError,))


def test_debug_variable_keeps_the_traceback(monkeypatch):
    monkeypatch.setenv("APR_JAX_DEBUG", "1")
    with pytest.raises(ValueError, match="bad"):
        run_command(raises(ValueError("bad")), usage=(ValueError,))


def test_commands_keep_compiled_programs_on_disk(tmp_path, monkeypatch):
    import jax

    from apr_jax.cli import COMPILE_CACHE_ENV, enable_compile_cache

    previous = jax.config.jax_compilation_cache_dir  # the test session's own cache
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        monkeypatch.setenv(COMPILE_CACHE_ENV, "")
        assert enable_compile_cache() is None and not jax.config.jax_compilation_cache_dir
        monkeypatch.setenv(COMPILE_CACHE_ENV, str(tmp_path / "xla"))
        assert enable_compile_cache() == str(tmp_path / "xla") == jax.config.jax_compilation_cache_dir
        monkeypatch.setenv(COMPILE_CACHE_ENV, str(tmp_path / "other"))
        assert enable_compile_cache() == str(tmp_path / "xla")  # a directory JAX already has is kept
    finally:
        jax.config.update("jax_compilation_cache_dir", previous)


def test_help_goes_to_stdout_with_exit_0(capsys):
    from apr_jax.cli import HelpRequested

    assert run_command(raises(HelpRequested("usage: demo\n\nhelp")), usage=(ValueError,), compile_cache=False) == 0
    assert capsys.readouterr() == ("usage: demo\n\nhelp\n", "")


def test_command_line_mistakes_exit_2_even_outside_usage(capsys, monkeypatch):
    from apr_jax.cli import UsageError

    monkeypatch.delenv("APR_JAX_DEBUG", raising=False)
    assert run_command(raises(UsageError("unknown flag --x")), usage=(), compile_cache=False) == USAGE_ERROR
    assert capsys.readouterr().err == "error: unknown flag --x\n"
