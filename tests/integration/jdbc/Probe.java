// A JDBC client (MariaDB Connector/J, what DBeaver's MariaDB driver uses) run against jitproxy.
// Prints one line per check; the Python test asserts on them.
import java.sql.*;

public class Probe {
    public static void main(String[] args) throws Exception {
        try (Connection c = DriverManager.getConnection(args[0], args[1], args[2])) {
            System.out.println("version=" + c.getMetaData().getDatabaseProductVersion());
            try (Statement s = c.createStatement();
                 ResultSet r = s.executeQuery("SELECT id, first_name FROM employee ORDER BY id LIMIT 2")) {
                ResultSetMetaData md = r.getMetaData();
                System.out.println("columns=" + md.getColumnName(1) + "," + md.getColumnName(2)
                        + " table=" + md.getTableName(1));
                while (r.next()) System.out.println("row=" + r.getInt(1) + "," + r.getString(2));
            }
            try (PreparedStatement p = c.prepareStatement("SELECT COUNT(*) FROM employee WHERE last_name = ?")) {
                p.setString(1, "x' OR '1'='1");
                try (ResultSet r = p.executeQuery()) { r.next(); System.out.println("injection_count=" + r.getInt(1)); }
            }
            try (Statement s = c.createStatement()) {
                s.executeQuery("SELECT * FROM salary");
                System.out.println("salary=READ");
            } catch (SQLException e) {
                System.out.println("salary_denied=" + e.getErrorCode());
            }
            DatabaseMetaData md = c.getMetaData();
            StringBuilder t = new StringBuilder();
            try (ResultSet r = md.getTables("hr_prod", null, "%", null)) {
                while (r.next()) t.append(r.getString("TABLE_NAME")).append(' ');
            }
            System.out.println("md_tables=" + t.toString().trim());
            int cols = 0;
            try (ResultSet r = md.getColumns("hr_prod", null, "salary", "%")) { while (r.next()) cols++; }
            System.out.println("md_salary_columns=" + cols);
            cols = 0;
            try (ResultSet r = md.getColumns("hr_prod", null, "employee", "%")) { while (r.next()) cols++; }
            System.out.println("md_employee_columns=" + cols);
            StringBuilder cat = new StringBuilder();
            try (ResultSet r = md.getCatalogs()) { while (r.next()) cat.append(r.getString(1)).append(' '); }
            System.out.println("md_catalogs=" + cat.toString().trim());
            try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("SHOW TABLES")) {
                StringBuilder b = new StringBuilder();
                while (r.next()) b.append(r.getString(1)).append(' ');
                System.out.println("tables=" + b.toString().trim());
            }
        }
    }
}
