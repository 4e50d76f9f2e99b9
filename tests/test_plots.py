"""Figures drawn from a synthetic results store, and the command line."""

import json
import os
import subprocess
import sys

from dps_jax import analysis, plots

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def trial(index, status, steps=None, learning_rate=0.01, momentum=0.99):
    return {'trial': index, 'seed': index, 'learning_rate': learning_rate, 'momentum': momentum,
            'decay_steps': 45000, 'end_learning_rate_factor': 0.003, 'status': status,
            'steps_to_result': steps if status == 'reached' else None, 'steps': steps or 5000,
            'best_val_error': 0.1, 'last_val_error': 0.3}


def write_store(workdir, search_names):
    """Two sparsities at three batch sizes, each cell with every trial outcome."""
    config = {'goal_error': 0.1, 'dataset': 'mnist', 'model': 'lenet300', 'optimizer': 'momentum',
              'search_names': search_names, 'sparsities': [0.0, 0.9], 'batch_sizes': [16, 32, 64]}
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'config.json'), 'w') as file:
        json.dump(config, file)
    for sparsity in (0.0, 0.9):
        for batch_size in (16, 32, 64):
            steps = int(64000 / batch_size * (1 + sparsity))
            trials = [trial(0, 'reached', steps + 100, 0.01, 0.99), trial(1, 'reached', steps, 0.1, 0.9),
                      trial(2, 'diverged', None, 1.0, 0.999), trial(3, 'exhausted', None, 1e-4, 0.9999),
                      trial(4, 'running', None, 0.003, 0.95)]
            folder = os.path.join(workdir, 'cells', f'{sparsity:g}_{batch_size}')
            os.makedirs(folder)
            with open(os.path.join(folder, 'trials.jsonl'), 'w') as file:
                file.writelines(json.dumps(record) + '\n' for record in trials)
            summary = {'sparsity': sparsity, 'batch_size': batch_size, 'steps_to_result': steps, 'best_trial': 1,
                       'counts': {'reached': 2, 'diverged': 1, 'exhausted': 1, 'running': 1}, 'until': 'first',
                       'trial_steps_computed': 10, 'wall_seconds': 1.0}
            with open(os.path.join(folder, 'summary.json'), 'w') as file:
                json.dump(summary, file)
    return workdir


def assert_png(path):
    with open(path, 'rb') as file:
        assert file.read(8) == PNG_MAGIC, path
    assert os.path.getsize(path) > 1000


def test_command_line_draws_curves_and_one_scatter_per_cell(tmp_path, capsys):
    workdir = write_store(str(tmp_path), ['learning_rate', 'momentum'])
    assert plots.main([workdir]) == 0  # in-process: a subprocess would pay for the imports again
    paths = capsys.readouterr().out.splitlines()
    figures = os.path.join(workdir, 'figures')
    for stem in ('steps_vs_batch', 'steps_vs_batch_normalized'):
        assert_png(os.path.join(figures, f'{stem}.png'))
        assert os.path.getsize(os.path.join(figures, f'{stem}.pdf')) > 1000
    scatters = sorted(name for name in os.listdir(os.path.join(figures, 'trials')) if name.endswith('.png'))
    assert scatters == sorted(f'{s}_{b}.png' for s in ('0', '0.9') for b in (16, 32, 64))
    for name in scatters:
        assert_png(os.path.join(figures, 'trials', name))
    assert len(paths) == 2 * (2 + 6) and all(os.path.exists(path) for path in paths)


def test_scatter_against_steps_when_momentum_is_not_searched(tmp_path):
    workdir = write_store(str(tmp_path), ['learning_rate'])
    study = analysis.load_study(workdir)
    cell = study.cells[(0.9, 32)]
    paths = plots.plot_trial_scatter(cell, study.config, str(tmp_path / 'out' / 'scatter'), formats=('png',))
    assert paths == [str(tmp_path / 'out' / 'scatter.png')]
    assert_png(paths[0])


def test_curves_without_analysis_or_any_reached_cell_still_draw(tmp_path):
    workdir = write_store(str(tmp_path), ['learning_rate'])
    study = analysis.load_study(workdir)
    unreached = study._replace(cells={key: cell._replace(trials=[trial(0, 'exhausted')])
                                      for key, cell in study.cells.items()})
    for which, source in (('computed', study), ('empty', unreached)):
        paths = plots.plot_steps_vs_batch(source, None, str(tmp_path / which), formats=('png',))
        assert_png(paths[0])


def test_command_line_on_a_missing_store_exits_2_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, '-m', 'dps_jax.plots', str(tmp_path / 'missing')],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert 'config.json' in result.stderr and result.stdout == ''


def test_lipschitz_and_noise_scale_figures_when_the_study_measured_them(tmp_path):
    workdir = write_store(str(tmp_path), ['learning_rate'])
    for sparsity in (0.0, 0.9):
        path = os.path.join(workdir, 'cells', f'{sparsity:g}_32', 'trials.jsonl')
        records = [json.loads(line) for line in open(path)]
        for record in records:
            record['lipschitz'] = {'step': [100, 200, 300], 'value': [5.0 * (1 + sparsity), None, 7.0]}
            record['noise_scale'] = {'step': [0, 200], 'b_simple': [80.0, 120.0],
                                     'gradient_norm_squared': [1.0, 0.5], 'trace_covariance': [80.0, 60.0]}
        with open(path, 'w') as file:
            file.writelines(json.dumps(record) + '\n' for record in records)
    paths = plots.plot_all(workdir, formats=('png',))
    names = {os.path.relpath(path, workdir) for path in paths}
    assert {'figures/lipschitz.png', 'figures/noise_scale.png'} <= names
    for name in ('lipschitz.png', 'noise_scale.png'):
        assert_png(os.path.join(workdir, 'figures', name))


def test_no_smoothness_figures_without_measurements(tmp_path):
    workdir = write_store(str(tmp_path), ['learning_rate'])
    names = {os.path.basename(path) for path in plots.plot_all(workdir, formats=('png',))}
    assert 'lipschitz.png' not in names and 'noise_scale.png' not in names


def test_an_unreached_cells_lipschitz_line_follows_its_lowest_error_only_when_errors_are_exact(tmp_path, monkeypatch):
    workdir = write_store(str(tmp_path), ['learning_rate'])
    study = analysis.load_study(workdir)
    # At sparsity 0.9, batch 32 no trial reached; trial 2 has the lowest recorded error.
    unreached = [{**trial(index, 'exhausted'), 'best_val_error': error}
                 for index, error in enumerate((0.31, 0.17, 0.12, 0.25))]
    cells = {key: cell._replace(trials=unreached if key == (0.9, 32) else cell.trials)
             for key, cell in study.cells.items() if key[1] == 32}
    for cell in cells.values():
        for record in cell.trials:
            record['lipschitz'] = {'step': [100, 200], 'value': [5.0, 6.0]}
    figures = []
    monkeypatch.setattr(plots, '_save', lambda figure, path_stem, formats: figures.append(figure) or [])
    for exact, lines, shown in ((True, 2, 'trial 2, not reached'), (False, 1, None)):
        config = {**study.config, 'exact_val_errors': exact}
        picked, description = plots._shown_trial(cells[(0.9, 32)], exact_errors=exact)
        assert (description or None) == shown and (picked is None) == (shown is None)
        plots.plot_lipschitz(study._replace(config=config, cells=cells), str(tmp_path / 'lipschitz'))
        axes = figures[-1].axes[0]
        assert len(axes.get_lines()) == lines
        labels = [line.get_label() for line in axes.get_lines()]
        assert labels[0] == 'sparsity 0 (best trial 1)'
        title = figures[-1]._suptitle.get_text()
        assert ('1 cell(s) no trial reached not drawn: their errors are lower bounds' in title) is (not exact)
    # A config written before the field: exact errors.
    assert plots._shown_trial(cells[(0.9, 32)])[1] == 'trial 2, not reached'


def test_a_figure_that_fails_mid_write_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    from matplotlib.figure import Figure
    workdir = write_store(str(tmp_path), ['learning_rate'])
    study = analysis.load_study(workdir)
    stem = str(tmp_path / 'out' / 'scatter')
    [path] = plots.plot_trial_scatter(study.cells[(0.9, 32)], study.config, stem, formats=('png',))
    before = open(path, 'rb').read()

    def broken_savefig(self, file, **options):
        file.write(PNG_MAGIC + b'half a figure')
        raise RuntimeError('killed mid-write')
    monkeypatch.setattr(Figure, 'savefig', broken_savefig)
    try:
        plots.plot_trial_scatter(study.cells[(0.0, 32)], study.config, stem, formats=('png',))
    except RuntimeError:
        pass
    else:
        raise AssertionError('the broken write should have raised')
    assert open(path, 'rb').read() == before
    assert os.listdir(tmp_path / 'out') == ['scatter.png']  # no temporary file left behind


def test_command_line_on_a_malformed_store_exits_2_with_one_line_naming_the_file(tmp_path, capsys):
    cell = os.path.join('cells', '0.9_32')
    for relative, text, problem in (
            ('config.json', '[]', 'is not a JSON object'),
            (os.path.join(cell, 'summary.json'), '[1, 2]', 'is not a JSON object'),
            (os.path.join(cell, 'summary.json'), '{"batch_size": 32}', "'sparsity' is None, not a number"),
            (os.path.join(cell, 'summary.json'), '{"sparsity": 0.9, "batch_size": "32"}',
             "'batch_size' is '32', not a whole number"),
            (os.path.join(cell, 'trials.jsonl'), '{"status": "reached"}\n', "trials.jsonl:1: 'trial' is None"),
            (os.path.join(cell, 'trials.jsonl'), '{"trial": 0, "learning_rate": 0.1, "status": "reached", '
             '"steps_to_result": Infinity}\n', "trials.jsonl:1 (reached): 'steps_to_result' is inf, not a whole"),
            (os.path.join(cell, 'trials.jsonl'), '{"trial": 0, "status": "exhausted"}\n',
             "trials.jsonl:1: 'learning_rate' is None, not a number")):
        workdir = write_store(str(tmp_path / str(len(os.listdir(tmp_path)))), ['learning_rate'])
        with open(os.path.join(workdir, relative), 'w') as file:
            file.write(text)
        assert plots.main([workdir]) == 2
        captured = capsys.readouterr()
        assert captured.out == '' and len(captured.err.strip().splitlines()) == 1
        assert captured.err.startswith('dps_jax.plots: error: ') and problem in captured.err
        assert os.path.basename(relative) in captured.err
